"""The relevance world's static tables (SPEC 3): departments, categories, brands, knowledge.

Every word is one whitespace-free token, so a word-level tokenizer round-trips every text.
The tables are data, not code: the generator (agrl/world/generate.py) reads them only.

- 8 departments x 5 leaf categories = 40 categories, each with title synonyms, the
  substances (material or ingredient) its items are made of, and its stated features
  (what a Q&A query asks and a title may state directly).
- 6 brands per department, 2 per tier (luxury / mid / affordable), with aliases.
- ACCESSORIES: asked product -> its accessory categories (phone -> phone-case).
- KNOWLEDGE: substance -> properties (material -> property, ingredient -> function). A
  knowledge query asks a property; the title states only the substance.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Category:
    name: str
    dept: str
    synonyms: tuple[str, ...]  # title/query surface forms other than `name`
    substances: tuple[str, ...]  # materials or ingredients its items may state
    features: tuple[str, ...]  # stated functions (Q&A queries)
    colors: bool = True
    sizes: bool = False
    audience: bool = False


_C = Category
# fmt: off
CATEGORIES: tuple[Category, ...] = (
    # electronics
    _C("phone", "electronics", ("smartphone", "cellphone"), ("aluminum", "glass", "plastic"),
       ("fast-charging", "waterproof", "dual-sim")),
    _C("laptop", "electronics", ("notebook",), ("aluminum", "plastic"),
       ("long-battery", "touchscreen", "backlit")),
    _C("tablet", "electronics", ("pad",), ("aluminum", "plastic", "glass"),
       ("stylus-support", "long-battery", "touchscreen")),
    _C("headphones", "electronics", ("earphones", "headset"), ("plastic", "leather"),
       ("noise-cancelling", "wireless", "waterproof")),
    _C("camera", "electronics", ("cam",), ("aluminum", "plastic"),
       ("4k-video", "waterproof", "stabilization")),
    # gadget accessories
    _C("phone-case", "gadgets", ("phone-cover",), ("tpu", "leather", "plastic"),
       ("shockproof", "waterproof")),
    _C("charger", "gadgets", ("adapter",), ("plastic",), ("fast-charging", "wireless")),
    _C("laptop-sleeve", "gadgets", ("laptop-bag",), ("nylon", "leather", "polyester"),
       ("shockproof", "waterproof")),
    _C("camera-bag", "gadgets", ("camera-case",), ("nylon", "canvas", "leather"),
       ("waterproof", "shockproof")),
    _C("screen-protector", "gadgets", ("screen-film",), ("glass", "plastic"),
       ("anti-glare", "privacy"), colors=False),
    # apparel
    _C("jacket", "apparel", ("coat",), ("nylon", "down", "wool", "polyester", "gore-tex"),
       ("hooded", "windproof"), sizes=True, audience=True),
    _C("t-shirt", "apparel", ("tee",), ("cotton", "polyester", "linen"),
       ("v-neck", "slim-fit"), sizes=True, audience=True),
    _C("dress", "apparel", ("gown",), ("silk", "cotton", "linen", "polyester"),
       ("sleeveless", "pockets"), sizes=True, audience=True),
    _C("jeans", "apparel", ("denims",), ("denim", "cotton"), ("stretch", "high-waist"),
       sizes=True, audience=True),
    _C("sweater", "apparel", ("pullover", "jumper"), ("wool", "cotton", "fleece", "polyester"),
       ("hooded", "turtleneck"), sizes=True, audience=True),
    # footwear
    _C("running-shoes", "footwear", ("runners", "trainers"), ("mesh", "leather", "rubber"),
       ("cushioned", "lightweight"), sizes=True, audience=True),
    _C("boots", "footwear", ("booties",), ("leather", "suede", "rubber"),
       ("waterproof", "fur-lined"), sizes=True, audience=True),
    _C("sandals", "footwear", ("flip-flops",), ("rubber", "leather"), ("adjustable", "cushioned"),
       sizes=True, audience=True),
    _C("sneakers", "footwear", ("kicks",), ("canvas", "leather", "mesh", "suede"),
       ("slip-on", "high-top"), sizes=True, audience=True),
    _C("slippers", "footwear", ("house-shoes",), ("fleece", "cotton", "rubber"),
       ("non-slip", "washable"), sizes=True, audience=True),
    # fashion
    _C("handbag", "fashion", ("purse", "tote"), ("leather", "canvas", "nylon"),
       ("zipper", "crossbody"), audience=True),
    _C("watch", "fashion", ("wristwatch",), ("steel", "leather", "plastic"),
       ("waterproof", "chronograph"), audience=True),
    _C("sunglasses", "fashion", ("shades",), ("plastic", "steel"), ("polarized", "uv-protection"),
       audience=True),
    _C("wallet", "fashion", ("billfold",), ("leather", "canvas", "nylon"),
       ("rfid-blocking", "coin-pocket"), audience=True),
    _C("belt", "fashion", ("strap",), ("leather", "canvas"), ("reversible", "adjustable"),
       sizes=True, audience=True),
    # beauty
    _C("shampoo", "beauty", ("hair-wash",), ("zinc", "tea-tree", "silicone", "sulfate"),
       ("anti-dandruff", "volumizing"), colors=False, audience=True),
    _C("face-cream", "beauty", ("moisturizer", "face-lotion"),
       ("hyaluronic", "shea", "retinol", "paraben"), ("moisturizing", "anti-aging"),
       colors=False, audience=True),
    _C("lipstick", "beauty", ("lip-color",), ("shea", "paraben", "vitamin-e"),
       ("long-lasting", "matte")),
    _C("sunscreen", "beauty", ("sunblock",), ("zinc-oxide", "alcohol", "paraben"),
       ("uv-protection", "water-resistant"), colors=False, audience=True),
    _C("toothpaste", "beauty", ("tooth-gel",), ("fluoride", "charcoal", "sulfate"),
       ("anti-cavity", "whitening"), colors=False, audience=True),
    # home
    _C("sofa", "home", ("couch",), ("leather", "velvet", "linen"), ("reclining", "sleeper")),
    _C("pillow", "home", ("cushion",), ("cotton", "down", "polyester"),
       ("washable", "hypoallergenic"), sizes=True),
    _C("blanket", "home", ("throw",), ("wool", "fleece", "cotton"), ("washable", "heated"),
       sizes=True),
    _C("lamp", "home", ("light",), ("steel", "glass", "ceramic"), ("dimmable", "rechargeable")),
    _C("curtain", "home", ("drape",), ("linen", "velvet", "polyester"),
       ("blackout", "thermal")),
    # kitchen
    _C("pan", "kitchen", ("skillet",), ("cast-iron", "steel", "aluminum", "ceramic"),
       ("nonstick", "induction-ready")),
    _C("knife", "kitchen", ("blade",), ("steel", "ceramic"), ("self-sharpening", "serrated")),
    _C("kettle", "kitchen", ("boiler",), ("steel", "glass", "plastic"),
       ("auto-shutoff", "fast-boil")),
    _C("mug", "kitchen", ("cup",), ("ceramic", "glass", "steel"),
       ("insulated", "dishwasher-safe")),
    _C("blender", "kitchen", ("mixer",), ("glass", "plastic"), ("quiet", "self-cleaning")),
)
# fmt: on
CATEGORY: dict[str, Category] = {c.name: c for c in CATEGORIES}

DEPARTMENTS: tuple[str, ...] = tuple(dict.fromkeys(c.dept for c in CATEGORIES))

# Asked product -> accessory categories (an accessory answering the product query -> label 2).
ACCESSORIES: dict[str, tuple[str, ...]] = {
    "phone": ("phone-case", "charger", "screen-protector"),
    "laptop": ("laptop-sleeve", "charger"),
    "tablet": ("screen-protector", "charger"),
    "camera": ("camera-bag",),
}

TIERS = ("luxury", "mid", "affordable")


@dataclass(frozen=True)
class Brand:
    name: str
    dept: str
    tier: str
    aliases: tuple[str, ...]


_B = Brand
BRANDS: tuple[Brand, ...] = (
    _B("vertexa", "electronics", "luxury", ("vtx",)),
    _B("lumora", "electronics", "luxury", ("lumo",)),
    _B("novatek", "electronics", "mid", ("nova",)),
    _B("zentro", "electronics", "mid", ()),
    _B("budgo", "electronics", "affordable", ("bdg",)),
    _B("kiwix", "electronics", "affordable", ()),
    _B("armora", "gadgets", "luxury", ("arm",)),
    _B("castello", "gadgets", "luxury", ()),
    _B("shieldo", "gadgets", "mid", ("shld",)),
    _B("plugma", "gadgets", "mid", ()),
    _B("cheapo", "gadgets", "affordable", ("chp",)),
    _B("gizmi", "gadgets", "affordable", ()),
    _B("valmont", "apparel", "luxury", ("vlm",)),
    _B("orsini", "apparel", "luxury", ("ors",)),
    _B("northpeak", "apparel", "mid", ("npk",)),
    _B("tidewear", "apparel", "mid", ()),
    _B("basix", "apparel", "affordable", ()),
    _B("threadly", "apparel", "affordable", ("thrd",)),
    _B("corvani", "footwear", "luxury", ("crv",)),
    _B("belloro", "footwear", "luxury", ()),
    _B("stridex", "footwear", "mid", ("stx",)),
    _B("pacely", "footwear", "mid", ()),
    _B("stepco", "footwear", "affordable", ("stp",)),
    _B("walkit", "footwear", "affordable", ()),
    _B("maisonde", "fashion", "luxury", ("msd",)),
    _B("auvelle", "fashion", "luxury", ("auv",)),
    _B("linden", "fashion", "mid", ()),
    _B("carlow", "fashion", "mid", ("crl",)),
    _B("modish", "fashion", "affordable", ()),
    _B("trendo", "fashion", "affordable", ("trd",)),
    _B("celeste", "beauty", "luxury", ("clst",)),
    _B("aurore", "beauty", "luxury", ()),
    _B("purely", "beauty", "mid", ("pry",)),
    _B("glowie", "beauty", "mid", ()),
    _B("fresko", "beauty", "affordable", ("frs",)),
    _B("dailyme", "beauty", "affordable", ()),
    _B("casaluxe", "home", "luxury", ("cslx",)),
    _B("velora", "home", "luxury", ()),
    _B("homely", "home", "mid", ("hml",)),
    _B("nestwell", "home", "mid", ()),
    _B("roomy", "home", "affordable", ()),
    _B("cozi", "home", "affordable", ("cz",)),
    _B("cucina", "kitchen", "luxury", ("ccn",)),
    _B("ferrano", "kitchen", "luxury", ()),
    _B("chefly", "kitchen", "mid", ("chf",)),
    _B("panora", "kitchen", "mid", ()),
    _B("kitchy", "kitchen", "affordable", ()),
    _B("cookeasy", "kitchen", "affordable", ("cke",)),
)
BRAND: dict[str, Brand] = {b.name: b for b in BRANDS}
BRANDS_OF_DEPT: dict[str, tuple[Brand, ...]] = {
    d: tuple(b for b in BRANDS if b.dept == d) for d in DEPARTMENTS
}

COLORS: tuple[str, ...] = ("black", "white", "red", "blue", "green", "pink", "grey", "brown")
COLOR_SYNONYMS: dict[str, tuple[str, ...]] = {"grey": ("gray",), "red": ("crimson",)}
SIZES: tuple[str, ...] = ("small", "medium", "large", "xl")
AUDIENCES: tuple[str, ...] = ("men", "women", "kids")
AUDIENCE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "men": ("mens",),
    "women": ("womens", "ladies"),
    "kids": ("children",),
}
UNISEX = "unisex"

# Substance -> properties. Material -> property (apparel, shoes, home, kitchen, gadgets);
# ingredient -> function (beauty). What a knowledge query tests.
KNOWLEDGE: dict[str, tuple[str, ...]] = {
    "cotton": ("breathable", "soft"),
    "linen": ("breathable",),
    "silk": ("soft",),
    "wool": ("warm",),
    "down": ("warm", "lightweight"),
    "fleece": ("warm", "soft"),
    "nylon": ("waterproof", "lightweight"),
    "gore-tex": ("waterproof", "breathable"),
    "polyester": ("quick-dry",),
    "denim": ("durable",),
    "leather": ("durable",),
    "canvas": ("durable", "breathable"),
    "suede": ("soft",),
    "mesh": ("breathable", "lightweight"),
    "rubber": ("waterproof", "non-slip"),
    "velvet": ("soft", "warm"),
    "silicone": ("smoothing",),
    "tpu": ("shockproof", "lightweight"),
    "plastic": ("lightweight",),
    "aluminum": ("lightweight", "durable"),
    "glass": ("scratch-resistant",),
    "steel": ("durable", "rust-proof"),
    "cast-iron": ("heat-retaining", "durable"),
    "ceramic": ("heat-retaining",),
    "zinc": ("anti-dandruff",),
    "tea-tree": ("anti-dandruff", "anti-acne"),
    "sulfate": ("cleansing",),
    "hyaluronic": ("moisturizing",),
    "shea": ("moisturizing",),
    "retinol": ("anti-aging",),
    "paraben": ("preserving",),
    "vitamin-e": ("moisturizing", "anti-aging"),
    "zinc-oxide": ("uv-protection",),
    "alcohol": ("quick-dry",),
    "fluoride": ("anti-cavity",),
    "charcoal": ("whitening",),
}

NEGATION_WORDS: tuple[tuple[str, ...], ...] = (("without",), ("no",), ("not",), ("free", "of"))
ALTERNATIVE_TEMPLATES: tuple[str, ...] = (
    "alternative to {brand} {cat}",
    "cheaper {cat} like {brand}",
    "{brand} {cat} dupe",
    "affordable {brand} style {cat}",
)
QA_TEMPLATES: tuple[str, ...] = (
    "which {cat} is {feature}",
    "what {cat} has {feature}",
    "is there a {feature} {cat}",
    "best {cat} for {feature}",
)
TITLE_FILLERS: tuple[str, ...] = (
    "new", "sale", "official", "premium", "classic", "hot", "original", "pro", "2024",
    "bestseller", "genuine", "deal",
)  # fmt: skip


def substances() -> tuple[str, ...]:
    """Every substance word used by some category, in first-seen order."""
    return tuple(dict.fromkeys(s for c in CATEGORIES for s in c.substances))


def properties() -> tuple[str, ...]:
    """Every property a knowledge query may ask, in first-seen order."""
    return tuple(dict.fromkeys(p for s in substances() for p in KNOWLEDGE[s]))


def features() -> tuple[str, ...]:
    return tuple(dict.fromkeys(f for c in CATEGORIES for f in c.features))
