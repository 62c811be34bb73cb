"""What a relevance judgment is: the rule book, response format, data schema, tokenizer."""
