from django.contrib import admin
from django.urls import include, path

from chat.urls import api_urlpatterns, page_urlpatterns

from . import views

urlpatterns = [
    path("health", views.health, name="health"),
    path("metrics", views.metrics, name="metrics"),
    path("admin/", admin.site.urls),
    path("api/", include(api_urlpatterns)),
    *page_urlpatterns,
]
