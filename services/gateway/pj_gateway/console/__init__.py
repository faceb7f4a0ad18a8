"""The web console at /console: static assets, OpenID Connect sign-in helpers and live events."""
