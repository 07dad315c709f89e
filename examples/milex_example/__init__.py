"""An example Milex app: it reports the arguments it received, so runs can be checked exactly."""
