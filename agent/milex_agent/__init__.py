"""The login-node side of Milex: schedulers, submission, and (later) the per-user agent daemon."""
