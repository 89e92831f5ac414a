"""The shop's background tasks.

The same functions run in two places: under Django, ``@task`` makes each one
a django.tasks Task that WasmqBackend enqueues; in the wasmq component
(components/order_total.py), where there is no Django, they stay plain
functions that the guest SDK calls. So this module imports nothing but the
standard library, and Django's decorator only when Django is there.
"""

try:
    from django.tasks import task
except ImportError:  # inside the WebAssembly component

    def task(function=None, **options):
        return function if function is not None else (lambda f: f)


@task
def order_total(lines, discount_percent=0):
    """The total of an order in cents: ``lines`` is a list of
    ``{"sku", "unit_cents", "quantity"}``; a quantity below 1 fails the task
    with ValueError."""
    subtotal = 0
    for line in lines:
        if line["quantity"] < 1:
            raise ValueError(f"quantity of {line['sku']} must be at least 1")
        subtotal += line["unit_cents"] * line["quantity"]
    discount = subtotal * discount_percent // 100
    return {"lines": len(lines), "subtotal_cents": subtotal, "total_cents": subtotal - discount}
