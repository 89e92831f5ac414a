from django.urls import path

from shop import views

urlpatterns = [
    path("totals/", views.create_total),
    path("totals/<str:result_id>/", views.show_total),
]
