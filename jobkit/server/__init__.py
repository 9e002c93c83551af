"""jobkit's HTTPS API: a Bottle app on cheroot with mutual TLS 1.3, and its PKI."""
