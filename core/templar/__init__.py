"""Templar's wire facts (docs/templar.md): its object names, coordination bodies, and its
gradient payloads (`torch.save` archives), read without unpickling and written for Templar's
loader."""
