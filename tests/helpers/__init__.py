"""Helpers shared by more than one test folder (a folder's own helpers live beside its tests)."""
