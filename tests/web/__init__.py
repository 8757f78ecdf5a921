"""Web tier: the pages of `processor serve` in Chromium (playwright)."""
