"""Templar's gradient payloads (`torch.save` archives), read without unpickling and written
for Templar's loader; see docs/templar.md."""
