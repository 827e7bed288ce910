"""Identity sources: one module per kind, behind ``base.IdentitySourceDriver``."""
