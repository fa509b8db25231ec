"""Running Ridemesh: the CLI, status, the page server, the local mesh, the simulator."""
