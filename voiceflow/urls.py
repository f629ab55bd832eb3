from django.contrib import admin
from django.urls import include, path

from chat.urls import api_urlpatterns, page_urlpatterns

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include(api_urlpatterns)),
    *page_urlpatterns,
]
