"""falcon-oauth: MockForge's OAuth2 authentication plugin (RFC 7662 token introspection)."""

__version__ = "0.1.0"
