"""One error base: every error class of the package is a ConceptAttentionError and still its old built-in; the CLI
and the app report only those (not a ValueError from torch) as user errors."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest
import torch

import conceptattention
from conceptattention import ConceptAttentionError, ConceptError
from conceptattention.cli import generate as generate_cli
from conceptattention.cli.main import main


#: The built-in each error class subclassed before the common base (``except ValueError`` etc. must keep working).
OLD_BUILTINS: dict[str, tuple[type[BaseException], ...]] = {
    **dict.fromkeys(
        [
            "AppInputError", "BaselineError", "CLIError", "CheckerError", "ConceptError", "ConceptKindError",
            "ConceptMapsFileError", "ConfigError", "DAAMError", "DatasetError", "DatasetFolderError",
            "DatasetFormatError", "FidelityError", "ImageLoadError", "MeasureError", "MemoryLimitError",
            "MethodError", "MetricInputError", "ModelError", "ModelLoadError", "OutputPathError", "ResultsFileError",
            "RunMismatchError", "SceneError", "TimelineError", "TimelineMemoryError", "TrainingError",
            "UnknownMethodError", "UnknownWordsError", "VideoOutputError",
        ],
        (ValueError,),
    ),
    "ConceptMapsNotFoundError": (ValueError, FileNotFoundError),
    "DatasetNotFoundError": (ValueError, FileNotFoundError),
    "ImageNotFoundError": (ValueError, FileNotFoundError),
    "OutputExistsError": (ValueError, FileExistsError),
    "NoMapsError": (RuntimeError,),
    "UnsupportedSetupError": (RuntimeError,),
    "UnsupportedModelError": (TypeError,),
    "MissingExtraError": (ModuleNotFoundError, RuntimeError),
    "GradioMissingError": (ModuleNotFoundError, RuntimeError),
}


def _package_error_classes() -> list[type[BaseException]]:
    """Every exception class named ``*Error`` defined in a module of the package (found by importing them all)."""
    found: dict[str, type[BaseException]] = {}
    for module_info in pkgutil.walk_packages(conceptattention.__path__, "conceptattention."):
        if module_info.name.endswith("__main__"):
            continue  # running it would start the command line
        module = importlib.import_module(module_info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and name.endswith("Error")
                and value.__module__.startswith("conceptattention.")
                and value is not ConceptAttentionError
            ):
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return [found[key] for key in sorted(found)]


ERROR_CLASSES = _package_error_classes()


def test_the_walk_finds_every_error_class() -> None:
    names = {cls.__name__ for cls in ERROR_CLASSES}
    assert set(OLD_BUILTINS) <= names, sorted(set(OLD_BUILTINS) - names)


@pytest.mark.parametrize("error_class", ERROR_CLASSES, ids=lambda cls: cls.__name__)
def test_every_error_is_a_concept_attention_error_and_its_builtin(error_class: type[BaseException]) -> None:
    assert issubclass(error_class, ConceptAttentionError)
    builtins = OLD_BUILTINS.get(error_class.__name__)
    if builtins is None:  # a class added since: it must still be one of the usual built-ins, not a bare Exception
        builtins = tuple(b for b in (ValueError, TypeError, RuntimeError, OSError) if issubclass(error_class, b))
        assert builtins, f"{error_class.__name__} subclasses no built-in error besides Exception"
    for builtin in builtins:
        assert issubclass(error_class, builtin), f"{error_class.__name__} is no longer a {builtin.__name__}"
    try:
        raise error_class("message")
    except ConceptAttentionError as error:  # an instance can be raised and caught by the base
        assert str(error) == "message"


def _torch_value_error(*_: object) -> None:
    """A ValueError raised by torch itself (a bug in a command, not a bad input)."""
    torch.nn.functional.cross_entropy(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))


class TestCommandLine:
    def test_a_torch_value_error_inside_a_command_is_not_a_user_error(self, monkeypatch, tmp_path, capsys) -> None:
        monkeypatch.setattr(generate_cli, "check_mask_options", _torch_value_error)
        out = tmp_path / "run"
        with pytest.raises(ValueError, match="batch_size") as raised:
            main(["generate", "--out", str(out)])
        assert not isinstance(raised.value, ConceptAttentionError)
        assert "conceptattention: error" not in capsys.readouterr().err  # it keeps its traceback
        assert not out.exists()

    def test_a_package_error_inside_a_command_is_one_error_line(self, monkeypatch, tmp_path, capsys) -> None:
        def refuse(*_: object) -> None:
            raise ConceptError("Concept 'x' is given twice; each concept must be unique.")

        monkeypatch.setattr(generate_cli, "check_mask_options", refuse)
        assert main(["generate", "--out", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err
        assert err.strip() == "conceptattention: error: Concept 'x' is given twice; each concept must be unique."


class TestApp:
    def test_a_torch_value_error_is_shown_as_an_unexpected_error(self) -> None:
        from conceptattention.app.service import UNEXPECTED_ERROR_MESSAGE, run_safely

        assert run_safely(_torch_value_error).error == UNEXPECTED_ERROR_MESSAGE

    def test_a_package_error_is_shown_verbatim(self) -> None:
        from conceptattention.app.service import run_safely
        from conceptattention.config import ConfigError

        def refuse() -> None:
            raise ConfigError("layers must not be empty.")

        assert run_safely(refuse).error == "layers must not be empty."
