"""The package version, as a constant: reading it from the installed metadata costs ~60 ms of start-up."""

VERSION = "0.1.0"
