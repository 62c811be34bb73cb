"""The RL core: rollout types, rewards (RRS), advantages, guided replay (AGR), losses."""
