"""LocationService: drivers' fixes in, live state and watch streams out."""
