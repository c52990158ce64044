"""``ceindex eval``: run systems through the search pipeline and score them with ranx."""
