"""The shop's tasks, on Django's database; the task uses the ORM as a Django task would."""

from __future__ import annotations

from django_tasks import task

from pgsched.contrib.django import DjangoApp

app = DjangoApp()


@task(priority=20, queue_name="emails")
def add(x: int, y: int) -> int:
    """A task of Django's Tasks framework (the django-tasks backport), run by pgsched."""
    return x + y


@task()
def fail(message: str) -> None:
    raise ValueError(message)


@app.task
def ship(order_id: int) -> str:
    from tests.django_project.shop.models import Order

    order = Order.objects.get(id=order_id)
    order.shipped = True
    order.save()
    return order.item


def greet(context: object, name: str) -> str:
    """Shaped for takes_context=True, which PgschedBackend refuses (it passes no context yet)."""
    return f"hi {name}"
