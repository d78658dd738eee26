"""Container deployment helpers: compose-file generation and the image's health probe."""
