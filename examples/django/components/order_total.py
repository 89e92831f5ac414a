"""The component that runs shop.tasks.order_total as wasmq module
`order_total` (built by scripts/build-examples.sh python)."""

from wasmq import function_task

from shop.tasks import order_total

WitWorld = function_task(order_total)
