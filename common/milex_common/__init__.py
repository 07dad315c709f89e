"""Code shared by the laptop client and the login-node agent: model, renderer, wire protocol."""
