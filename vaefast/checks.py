"""Argument checks for vaefast's configs, loaders and samplers: each returns the value (as a plain int, float
or tuple) or raises ValueError naming the argument, what it must be and what it got.

The command line checks its flags with argparse types of its own (vaefast/cli.py), so that a bad flag reads
as argparse's other errors do; these are for the Python API.
"""
import math
import numbers


# No count or size in vaefast comes near 2^31; a larger one overflows torch's size arithmetic (a TypeError or
# OverflowError from deep inside it) or asks for more memory than exists.
LARGEST_SIZE = 2**31 - 1


def integer(name, value, *, minimum=1, maximum=LARGEST_SIZE):
    """An int in [minimum, maximum]. Floats (even 2.0) and bools are refused: a count or a size is never
    either."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    if value > maximum:
        raise ValueError(f"{name} must be at most {maximum}; got {value!r}")
    return int(value)


def optional_integer(name, value, *, minimum=1):
    """None, or an int in [minimum, LARGEST_SIZE]."""
    return None if value is None else integer(name, value, minimum=minimum)


def is_number(value, *, minimum=0.0, inclusive=False):
    """Whether value is a real number (not a bool), finite, and > minimum (>= minimum when inclusive)."""
    return (not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
            and (value >= minimum if inclusive else value > minimum))


def number(name, value, *, minimum=0.0, inclusive=False):
    """A finite float > minimum (>= minimum when inclusive). NaN and inf are refused: a learning rate or a
    weight that is not finite trains nothing."""
    if not is_number(value, minimum=minimum, inclusive=inclusive):
        bound = f">= {minimum:g}" if inclusive else f"> {minimum:g}"
        raise ValueError(f"{name} must be a finite number {bound}; got {value!r}")
    return float(value)


def optional_number(name, value, *, minimum=0.0, inclusive=False):
    """None, or a finite float > minimum (>= minimum when inclusive)."""
    return None if value is None else number(name, value, minimum=minimum, inclusive=inclusive)


def sizes(name, value, *, allow_empty=False):
    """A tuple of ints in [1, LARGEST_SIZE], from any sequence of them (checkpoints store tuples as lists)."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"{name} must be a sequence of positive integers; got {value!r}")
    values = tuple(value)
    if (not values and not allow_empty) or not all(
            not isinstance(v, bool) and isinstance(v, numbers.Integral) and 1 <= v <= LARGEST_SIZE for v in values):
        raise ValueError(f"{name} must be a {'' if allow_empty else 'non-empty '}sequence of positive "
                         f"integers; got {value!r}")
    return tuple(int(v) for v in values)
