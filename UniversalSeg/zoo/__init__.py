"""Recipes that build the models shipped in ``Resources/Models`` (``universalseg zoo build NAME``)."""
