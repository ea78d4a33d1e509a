"""The base of every option with a fixed set of values (dataset.loader, augment.name, method.backward, ...).

Each option's values are a `Choice` defined next to the code that uses them; the structured-config schema types the
field with it, so Hydra rejects any other value while composing, with a message listing the valid ones.
"""
import enum


class Choice(str, enum.Enum):
    """A str Enum whose member names equal their values (OmegaConf converts a string to a member by its name; values
    like "reduce-overhead" need the functional API: Choice("Name", [(v, v) for v in values])). A member is its plain
    value in ==, str(), f-strings, repr() in messages and json. (Files written with torch.save get plain strings:
    dlb.config.to_container converts a config's members.)"""

    __str__ = str.__str__
    __format__ = str.__format__

    def __repr__(self) -> str:
        return repr(self.value)
