"""Exporting roles as standard LoRA adapters (GGUF for llama.cpp, PEFT for vLLM/LoRAX). numpy only."""
