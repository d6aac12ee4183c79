"""Put a module (a BAM, or any attention block) after a module of a network, keys unchanged.

- the module is a plain ``nn.Sequential`` (``layer1``, ``features.3``): the new one is appended
  to it as a child named ``name`` (new keys ``layer1.bam.*``);
- its parent is a plain ``nn.Sequential`` (a VGG's ReLU in ``features``): the new one goes
  into the parent right after it, named ``<child>_<name>`` (new keys ``features.2_bam.*``);
- otherwise the module is wrapped in :class:`BAMAfter` (``module`` then the new one); its
  state_dict hooks drop the ``module.`` level, so the keys stay ``<path>.*`` and
  ``<path>.<name>.*``.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["BAMAfter", "insert_after"]


class BAMAfter(nn.Module):
    """``bam(module(x))`` for a module that cannot take BAM inside or beside itself.

    The state_dict keeps the wrapped module's keys at this level (``conv.weight``, not
    ``conv.module.weight``), so checkpoints written before wrapping still load. ``bam`` may
    be any module (an SE or CBAM block); ``name`` is its state_dict key (default ``"bam"``).
    """

    def __init__(self, module: nn.Module, bam: nn.Module, name: str = "bam") -> None:
        super().__init__()
        self.module = module
        self.bam = bam
        self.after_name = name
        self._register_state_dict_hook(_drop_module_level)
        self._register_load_state_dict_pre_hook(_add_module_level, with_module=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.bam(self.module(x))


def _drop_module_level(module, state_dict, prefix, local_metadata):
    for key in [k for k in state_dict if k.startswith(prefix)]:
        rest = key[len(prefix) :]
        if rest.startswith("module."):
            state_dict[prefix + rest[len("module.") :]] = state_dict.pop(key)
        elif rest.startswith("bam.") and module.after_name != "bam":
            state_dict[prefix + module.after_name + rest[len("bam") :]] = state_dict.pop(key)
    return state_dict


def _add_module_level(
    module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors
):
    # Every key but the added module's is the wrapped module's, even one that starts with
    # "module." (its own child of that name): the state_dict hook dropped exactly one level
    # from each. (A child named like the added one cannot occur: insert_after refuses it.)
    after = module.after_name + "."
    for key in [k for k in state_dict if k.startswith(prefix)]:
        rest = key[len(prefix) :]
        if rest.startswith(after):
            state_dict[prefix + "bam." + rest[len(after) :]] = state_dict.pop(key)
        else:
            state_dict[prefix + "module." + rest] = state_dict.pop(key)


def plain_sequential(m: nn.Module) -> bool:
    return isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward


def placement(model: nn.Module, path: str, kind: type, name: str = "bam") -> tuple[str, str]:
    """How a module of type ``kind`` goes after the module at ``path`` (``"append"``,
    ``"beside"`` or ``"wrap"``) and its own path; a ValueError where one is there already or
    the keys would clash."""
    module = model.get_submodule(path)
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    beside = f"{parent_path + '.' if parent_path else ''}{child}_{name}"
    existing = None
    if isinstance(module, kind):
        existing = path
    elif (isinstance(module, BAMAfter) and isinstance(module.bam, kind)) or (
        plain_sequential(module) and isinstance(module._modules.get(name), kind)
    ):
        existing = f"{path}.{name}"
    elif plain_sequential(parent) and isinstance(parent._modules.get(f"{child}_{name}"), kind):
        existing = beside
    if existing is not None:
        raise ValueError(
            f"{path} already has a {kind.__name__} after it ({existing}); a second one would "
            f"stack two on one map (and share its state_dict keys). Leave {path!r} out of at=."
        )
    if plain_sequential(module) and name not in module._modules:
        return "append", f"{path}.{name}"
    if plain_sequential(parent) and f"{child}_{name}" not in parent._modules:
        return "beside", beside
    # BAMAfter keeps the module's keys at this level, beside the new one's: they must not meet.
    if name in module._modules or any(k.split(".")[0] == name for k in module.state_dict()):
        raise ValueError(
            f"{path} has its own child named {name!r}, so a module after it would share the "
            f"state_dict keys {path}.{name}.* and one would be lost on load. Put it after "
            f"another module with at=, or place it by hand."
        )
    return "wrap", f"{path}.{name}"


def insert_after(model: nn.Module, path: str, module: nn.Module, name: str = "bam") -> str:
    """Put ``module`` after the submodule at ``path`` of ``model``, in place, so that it takes
    that submodule's output; return the new module's own path (its state_dict prefix).

    The original state_dict keys never change (see the module docstring). A ValueError, before
    any change, where a module of the same type is there already or ``name`` would clash.
    """
    how, new_path = placement(model, path, type(module), name)
    target = model.get_submodule(path)
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    if how == "append":
        target.add_module(name, module)
    elif how == "beside":
        items = list(parent._modules.items())
        parent._modules.clear()
        for key, m in items:
            parent._modules[key] = m
            if key == child:
                parent._modules[f"{child}_{name}"] = module
    else:
        setattr(parent, child, BAMAfter(target, module, name))
    return new_path
