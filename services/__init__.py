"""Ridemesh services: the location, ride and geo servers and the parts they share."""
