"""immortal.make_some_immortal() and hidden_referents(): what the walk writes, counts and
walks on to. The headers are a dict standing for the address space (word id(obj) >> 3)."""
import gc
import types

from gunicorn_smartspawn.forksafety import immortal


def headers(*objects, word=1):
    return {id(obj) >> 3: word for obj in objects}


def treat_as_immortal(monkeypatch, *objects):
    """Their fake headers say immortal; 3.14's test of the real ones is set aside."""
    monkeypatch.setattr(immortal, "maybe_mortal", lambda found: found)  # as on 3.13
    return headers(*objects, word=immortal.IMMORTAL_BIT | 5)


def test_each_mortal_object_is_made_immortal_once_even_when_met_twice(monkeypatch):
    container, text, number = [], "text %d" % 7, 10**30
    words = headers(container, text, number)
    again = []
    made = immortal.make_some_immortal([container, text, container, number], words, again)
    assert made == 3
    assert set(words.values()) == {(1 & immortal.KEPT_BITS) | immortal.SET_BITS}
    assert again == [container]  # what may refer to others is walked on; atoms are not


def test_objects_immortal_already_are_left_as_they_are(monkeypatch):
    """Not written, not counted; of them only an untracked dict is walked again: filled
    after an earlier pass (the preloader's, in a template), it may hold new objects.
    (3.14 tracks every dict: there, none is.)"""
    untracked, tracked, atoms = {"a": 1}, {"b": []}, (1, 2)
    words = treat_as_immortal(monkeypatch, untracked, tracked, atoms)
    before = dict(words)
    again = []
    assert immortal.make_some_immortal([untracked, tracked, atoms], words, again) == 0
    assert words == before
    assert again == [untracked] * (not gc.is_tracked(untracked))


def test_hidden_referents_are_the_keys_of_dicts_and_the_parts_of_code():
    class Table(dict):
        def keys(self):  # not what the walk reads: the dict's own storage is
            return []

    code = compile("x = 'constant'", "<walk>", "exec")
    found = immortal.hidden_referents([{"key": "value"}, Table(other=1), code, ["item"]])
    assert found[:2] == ["key", "other"]
    assert found[2:] == [code.co_consts, code.co_names, code.co_linetable,
                         code.co_exceptiontable, code.co_filename, code.co_name,
                         code.co_qualname]


def test_on_3_14_the_objects_immortal_already_are_left_out_in_c():
    fresh = types.SimpleNamespace()
    found = list(immortal.maybe_mortal([None, fresh, 1, True]))
    if immortal.IS_IMMORTAL is not None:  # 3.14: None, 1 and True are immortal
        assert found == [fresh]
    else:
        assert found == [None, fresh, 1, True]
