import json

from django.db import transaction
from django.http import HttpResponseBadRequest, JsonResponse
from django.tasks.exceptions import TaskResultDoesNotExist
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from .tasks import order_total


@csrf_exempt
@require_POST
def create_total(request):
    """POST {"lines": [...], "discount_percent": 10} -> 202 {"id": ...}."""
    try:
        order = json.loads(request.body)
    except ValueError:
        return HttpResponseBadRequest("the body must be JSON")
    with transaction.atomic():
        # Sent to wasmq when this block commits: result.id is known after it.
        result = order_total.enqueue(order["lines"], discount_percent=order.get("discount_percent", 0))
    return JsonResponse({"id": result.id}, status=202)


@require_GET
def show_total(request, result_id):
    try:
        result = order_total.get_result(result_id)
    except TaskResultDoesNotExist:
        return JsonResponse({"error": "no such task"}, status=404)
    body = {"id": result.id, "status": result.status, "attempts": result.attempts}
    if result.status == "SUCCESSFUL":
        body["total"] = result.return_value
    elif result.errors:
        body["error"] = result.errors[-1].traceback.rstrip().rsplit("\n", 1)[-1]
    return JsonResponse(body)
