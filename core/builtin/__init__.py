"""The built-in models: the procedural world they draw, its captions, and the analyser that scores pictures of it."""
