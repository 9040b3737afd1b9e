"""The shop's tasks, on Django's database; the task uses the ORM as a Django task would."""

from __future__ import annotations

from pgsched.contrib.django import DjangoApp

app = DjangoApp()


@app.task
def ship(order_id: int) -> str:
    from tests.django_project.shop.models import Order

    order = Order.objects.get(id=order_id)
    order.shipped = True
    order.save()
    return order.item
