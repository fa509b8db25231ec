"""RideService: the ride lifecycle, dispatch, live ride status and chat."""
