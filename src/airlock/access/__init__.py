"""Who may do what: API keys with roles, alias scopes, expiry and per-key rate limits.

The gateway answers keys from memory (`KeyRing`); these functions are what the CLI and the
control API call to change them.
"""
