"""Cardiology: echo and angiography loops at their true frame rate, calipers, EF and ECGs."""

from modules.cardiology.module import CardiologyModule

module = CardiologyModule()

__all__ = ["CardiologyModule", "module"]
