"""GeoQueryService: nearby drivers, geofences, tracks, ETAs and supply heatmaps."""
