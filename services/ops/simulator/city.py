"""Pure street-grid movement and GPS noise: where a simulated car is, and what its phone reports."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from services.domain.geodesy import EARTH_RADIUS_M

# East, north, west, south as unit steps on the grid, with the compass heading of each.
DIRECTIONS: tuple[tuple[int, int], ...] = ((1, 0), (0, 1), (-1, 0), (0, -1))
HEADINGS: dict[tuple[int, int], float] = {(1, 0): 90.0, (0, 1): 0.0, (-1, 0): 270.0, (0, -1): 180.0}


@dataclass(frozen=True)
class Grid:
    """A street grid around a centre: streets every `block_m` metres, inside `radius_m`."""

    center_lat: float
    center_lng: float
    block_m: float = 150.0
    radius_m: float = 3000.0

    def to_latlng(self, x_m: float, y_m: float) -> tuple[float, float]:
        """The point `x_m` east and `y_m` north of the centre (a local flat-earth projection)."""
        lat = self.center_lat + math.degrees(y_m / EARTH_RADIUS_M)
        lng = self.center_lng + math.degrees(
            x_m / (EARTH_RADIUS_M * math.cos(math.radians(self.center_lat)))
        )
        return lat, lng

    def to_xy(self, lat: float, lng: float) -> tuple[float, float]:
        """The inverse of `to_latlng`."""
        y = math.radians(lat - self.center_lat) * EARTH_RADIUS_M
        x = math.radians(lng - self.center_lng) * EARTH_RADIUS_M
        return x * math.cos(math.radians(self.center_lat)), y

    def random_intersection(self, rng: random.Random, within_m: float | None = None) -> Car:
        """A car parked at a random intersection no further than `within_m` from the centre."""
        reach = int((within_m or self.radius_m) / math.sqrt(2) // self.block_m)
        x = rng.randint(-reach, reach) * self.block_m
        y = rng.randint(-reach, reach) * self.block_m
        return Car(x, y, rng.choice(DIRECTIONS))


@dataclass
class Car:
    """A car on the grid: its position in metres from the centre and the way it is facing."""

    x: float
    y: float
    direction: tuple[int, int]

    @property
    def heading_deg(self) -> float:
        return HEADINGS[self.direction]


def on_line(value: float, block_m: float) -> bool:
    """Whether a coordinate lies on a street (a multiple of the block size)."""
    return abs(value - round(value / block_m) * block_m) < 1e-6


def snap_to_street(x: float, y: float, block_m: float) -> tuple[float, float]:
    """The nearest point on a street: the coordinate closer to a street line is moved onto it."""
    rx, ry = round(x / block_m) * block_m, round(y / block_m) * block_m
    return (rx, y) if abs(rx - x) <= abs(ry - y) else (x, ry)


def _choose_turn(car: Car, grid: Grid, rng: random.Random) -> tuple[int, int]:
    """At an intersection: mostly straight on, else a turn; a U-turn only where the next block
    would leave the city."""
    back = (-car.direction[0], -car.direction[1])
    turns = [d for d in DIRECTIONS if d not in (car.direction, back)]
    rng.shuffle(turns)
    options = [car.direction, *turns] if rng.random() < 0.65 else [*turns, car.direction]
    for d in [*options, back]:
        if math.hypot(car.x + d[0] * grid.block_m, car.y + d[1] * grid.block_m) <= grid.radius_m:
            return d
    return back


def _next_line(along: float, sign: int, block_m: float) -> float:
    """The next street line ahead of `along` in direction `sign`."""
    k = along / block_m
    return (math.floor(k + 1e-9) + 1) * block_m if sign > 0 else (math.ceil(k - 1e-9) - 1) * block_m


def _face_along_street(car: Car, grid: Grid) -> None:
    """Turns a car that faces across its street (after a trip ended mid-block) to follow it."""
    on_x, on_y = on_line(car.x, grid.block_m), on_line(car.y, grid.block_m)
    if on_x and not on_y and car.direction[0]:
        car.direction = (0, -1) if car.y > 0 else (0, 1)
    elif on_y and not on_x and car.direction[1]:
        car.direction = (-1, 0) if car.x > 0 else (1, 0)


def roam(car: Car, grid: Grid, distance_m: float, rng: random.Random) -> None:
    """Drives `distance_m` along the streets, choosing a way at each intersection."""
    _face_along_street(car, grid)
    left = distance_m
    while left > 1e-9:
        if on_line(car.x, grid.block_m) and on_line(car.y, grid.block_m):
            car.x = round(car.x / grid.block_m) * grid.block_m
            car.y = round(car.y / grid.block_m) * grid.block_m
            car.direction = _choose_turn(car, grid, rng)
        axis = 0 if car.direction[0] else 1
        along = car.x if axis == 0 else car.y
        sign = car.direction[axis]
        move = min(left, abs(_next_line(along, sign, grid.block_m) - along))
        car.x += car.direction[0] * move
        car.y += car.direction[1] * move
        left -= move


def drive_to(car: Car, target: tuple[float, float], distance_m: float, block_m: float) -> bool:
    """Drives up to `distance_m` towards `target` (x, y) in two straight legs, first along the
    street the car is on. True once the car is there."""
    left = distance_m
    axes = (1, 0) if on_line(car.x, block_m) and not on_line(car.y, block_m) else (0, 1)
    for axis in axes:
        gap = target[axis] - (car.x if axis == 0 else car.y)
        if abs(gap) < 1e-6 or left <= 1e-9:
            continue
        move = min(left, abs(gap))
        sign = 1 if gap > 0 else -1
        car.direction = (sign, 0) if axis == 0 else (0, sign)
        if axis == 0:
            car.x += sign * move
        else:
            car.y += sign * move
        left -= move
    return abs(car.x - target[0]) < 1e-6 and abs(car.y - target[1]) < 1e-6


def gps_fix(
    grid: Grid, car: Car, rng: random.Random, sigma_m: float = 4.0
) -> tuple[float, float, float]:
    """What the phone reports: the position with Gaussian noise, and the accuracy it claims."""
    dx, dy = rng.gauss(0.0, sigma_m), rng.gauss(0.0, sigma_m)
    lat, lng = grid.to_latlng(car.x + dx, car.y + dy)
    accuracy = max(3.0, sigma_m * 2 + rng.uniform(-1.0, 1.0))
    return lat, lng, accuracy
