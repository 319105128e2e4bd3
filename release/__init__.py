"""Versioned releases: layout, local registry, push to and pull from the Hugging Face Hub."""
