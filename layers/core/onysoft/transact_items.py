"""The parts of a TransactWriteItems in DynamoDB's wire form, for the two transactions every billed request makes.

PynamoDB builds the same parts from model instances and expression objects: a model's `__init__` runs its
defaults over every attribute, each action and condition is an object serialised through placeholder maps, and
the usage record is serialised attribute by attribute — about a fifth of the proxy's CPU a request (BENCHMARKS
section 6). Here an item is a dict and an expression a string, built straight from the model's own attribute
definitions: a name the model does not define, or a required attribute left out, raises, as PynamoDB would; a
value is typed by its attribute (S or N). The transaction is still PynamoDB's (`Connection.transact_write_items`),
so its errors (TransactWriteError with its cancellation reasons) and order (puts, then updates) are unchanged.
"""

from __future__ import annotations

from functools import cache

from pynamodb.attributes import ListAttribute, NumberAttribute, UnicodeAttribute
from pynamodb.models import Model


@cache
def _types(model: type[Model]) -> dict[str, str]:
    """The model's attributes by name: "S", "N" or "L" (a list of strings). Any other kind is not for this path."""
    types = {}
    for name, attribute in model.get_attributes().items():
        if isinstance(attribute, NumberAttribute):
            types[attribute.attr_name] = "N"
        elif isinstance(attribute, UnicodeAttribute):
            types[attribute.attr_name] = "S"
        elif isinstance(attribute, ListAttribute) and attribute.element_type is UnicodeAttribute:
            types[attribute.attr_name] = "L"
        else:
            raise TypeError(f"{model.__name__}.{name}: no wire form here for {type(attribute).__name__}")
    return types


@cache
def _defaults_and_required(model: type[Model]) -> tuple[dict[str, object], frozenset[str]]:
    """What the model writes when a value is not given (its constant defaults), and what it cannot do without."""
    defaults, required = {}, set()
    for attribute in model.get_attributes().values():
        if attribute.default is not None:
            if callable(attribute.default):
                raise TypeError(f"{model.__name__}.{attribute.attr_name}: a computed default is not for this path")
            defaults[attribute.attr_name] = attribute.default
        elif not attribute.null:
            required.add(attribute.attr_name)
    return defaults, frozenset(required)


def wire(model: type[Model], name: str, value) -> dict:
    """One attribute value as DynamoDB takes it, typed by the model's attribute `name`."""
    kind = _types(model).get(name)
    if kind is None:
        raise KeyError(f"{model.__name__} has no attribute {name!r}")
    if kind == "N":
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{model.__name__}.{name} is a whole number, not {value!r}")  # money is never a float
        return {"N": str(value)}
    if kind == "L":
        return {"L": [{"S": str(v)} for v in value]}
    if not isinstance(value, str):
        raise TypeError(f"{model.__name__}.{name} is a string, not {value!r}")
    return {"S": value}


def put_new(model: type[Model], fields: dict) -> dict:
    """A Put of a new item (refused if an item with its key exists): the model's defaults for what is not given,
    None for "absent", as PynamoDB's save writes it."""
    defaults, required = _defaults_and_required(model)
    values = {**defaults, **fields}
    missing = required - {name for name, value in values.items() if value is not None}
    if missing:
        raise ValueError(f"{model.__name__}: no value for {', '.join(sorted(missing))}")
    item = {name: wire(model, name, value) for name, value in values.items() if value is not None}
    hash_key = model._hash_key_attribute().attr_name
    return {"TableName": model.Meta.table_name, "Item": item,
            "ConditionExpression": "attribute_not_exists(#0)", "ExpressionAttributeNames": {"#0": hash_key}}


class Update:
    """One Update of a transaction: its actions and condition, with placeholders for every name and value."""

    __slots__ = ("_model", "_key", "_set", "_add", "_remove", "_conditions", "_names", "_values", "_old_on_failure")

    def __init__(self, model: type[Model], key: dict):
        self._model = model
        self._key = {name: wire(model, name, value) for name, value in key.items()}
        self._set: list[str] = []
        self._add: list[str] = []
        self._remove: list[str] = []
        self._conditions: list[str] = []
        self._names: dict[str, str] = {}  # attribute name -> placeholder
        self._values: dict[str, dict] = {}
        self._old_on_failure = False

    def _name(self, name: str) -> str:
        if name not in _types(self._model):
            raise KeyError(f"{self._model.__name__} has no attribute {name!r}")
        placeholder = self._names.get(name)
        if placeholder is None:
            placeholder = self._names[name] = f"#{len(self._names)}"
        return placeholder

    def _value(self, name: str, value) -> str:
        placeholder = f":{len(self._values)}"
        self._values[placeholder] = wire(self._model, name, value)
        return placeholder

    # ----------------------------------------------------------------------------------------------- actions

    def add(self, name: str, amount: int) -> Update:
        self._add.append(f"{self._name(name)} {self._value(name, amount)}")
        return self

    def set(self, name: str, value) -> Update:
        self._set.append(f"{self._name(name)} = {self._value(name, value)}")
        return self

    def set_if_absent(self, name: str, value) -> Update:
        """The attribute keeps its value; an item without one gets `value`."""
        placeholder = self._name(name)
        self._set.append(f"{placeholder} = if_not_exists({placeholder}, {self._value(name, value)})")
        return self

    def remove(self, name: str) -> Update:
        self._remove.append(self._name(name))
        return self

    # ----------------------------------------------------------------------------------------------- conditions
    # Each adds one clause; the clauses are ANDed.

    def where_at_least(self, name: str, amount: int) -> Update:
        self._conditions.append(f"{self._name(name)} >= {self._value(name, amount)}")
        return self

    def where_absent_or_below(self, name: str, limit: int) -> Update:
        """The attribute is absent, or below `limit`; with a limit of 0 nothing passes (not even a first one)."""
        if limit <= 0:
            return self.where_never()
        placeholder = self._name(name)
        self._conditions.append(f"(attribute_not_exists({placeholder}) OR {placeholder} < "
                                f"{self._value(name, limit)})")
        return self

    def where_absent_or_at_most(self, name: str, limit: int) -> Update:
        placeholder = self._name(name)
        self._conditions.append(f"(attribute_not_exists({placeholder}) OR {placeholder} <= "
                                f"{self._value(name, limit)})")
        return self

    def where_equals(self, name: str, value) -> Update:
        self._conditions.append(f"{self._name(name)} = {self._value(name, value)}")
        return self

    def where_exists(self, name: str) -> Update:
        self._conditions.append(f"attribute_exists({self._name(name)})")
        return self

    def where_never(self) -> Update:
        """A condition no item meets: the transaction is refused with this item's reason."""
        placeholder = self._name(self._model._hash_key_attribute().attr_name)
        self._conditions.append(f"(attribute_not_exists({placeholder}) AND attribute_exists({placeholder}))")
        return self

    def old_item_on_failure(self) -> Update:
        """A refusal brings the item as it was (the cancellation reason's `Item`): why, without another read."""
        self._old_on_failure = True
        return self

    # ----------------------------------------------------------------------------------------------- the wire

    def to_wire(self) -> dict:
        clauses = []
        if self._set:
            clauses.append("SET " + ", ".join(self._set))
        if self._remove:
            clauses.append("REMOVE " + ", ".join(self._remove))
        if self._add:
            clauses.append("ADD " + ", ".join(self._add))
        if not clauses:
            raise ValueError("an Update with no action")
        update = {"TableName": self._model.Meta.table_name, "Key": self._key, "UpdateExpression": " ".join(clauses),
                  "ExpressionAttributeNames": {placeholder: name for name, placeholder in self._names.items()}}
        if self._values:
            update["ExpressionAttributeValues"] = self._values
        if self._conditions:
            update["ConditionExpression"] = " AND ".join(self._conditions)
        if self._old_on_failure:
            update["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
        return update


def transact(connection, *, puts: list[dict] = (), updates: list[Update] = (), token: str) -> None:
    """One TransactWriteItems through PynamoDB's connection (its retries, errors and client): the puts first, then
    the updates, in the order given (a cancellation's reasons come in that order)."""
    connection.transact_write_items(condition_check_items=[], delete_items=[], put_items=list(puts),
                                    update_items=[u.to_wire() for u in updates], client_request_token=token)
