"""Who may connect: password hashes, users, the PLAIN authenticator."""
