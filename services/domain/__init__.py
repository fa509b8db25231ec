"""Pure shared logic, no I/O: domain errors, geodesy, boxes and cells, validation, page tokens."""
