"""neeko-npc: one small model, every NPC its own voice (Neeko dynamic LoRA)."""

__version__ = "0.1.0"
