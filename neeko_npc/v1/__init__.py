"""Generated gRPC code for proto/neeko_npc/v1/dialogue.proto. Regenerate with `python -m neeko_npc.protogen`."""
