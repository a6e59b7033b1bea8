import zlib

from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_POST


def index(request):
    return HttpResponse("hello from django\n", content_type="text/plain")


@require_POST
def form(request):
    return JsonResponse({"name": request.POST["name"], "tags": request.POST.getlist("tag")})


@require_POST
def upload(request):
    upload = request.FILES["file"]
    size, crc = 0, 0
    for block in upload.chunks():
        size += len(block)
        crc = zlib.crc32(block, crc)
    return JsonResponse({"filename": upload.name, "size": size, "crc32": crc, "note": request.POST.get("note")})


@require_POST
def login(request):
    request.session["user"] = request.POST["user"]
    return redirect("/whoami")


def whoami(request):
    return JsonResponse({"user": request.session.get("user")})


def stream(request):
    lines = int(request.GET.get("lines", "10"))

    def generate():
        for i in range(lines):
            yield f"line {i}\n".encode()

    return StreamingHttpResponse(generate(), content_type="text/plain")


def boom(request):
    raise RuntimeError("view exploded on purpose")


def greet(request, name):
    return JsonResponse({"name": name, "q": request.GET.get("q")})


def cafe(request):
    return HttpResponse("bienvenue au café", content_type="text/plain; charset=utf-8")
