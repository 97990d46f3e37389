"""moto's S3 API on 127.0.0.1:PORT, served as `moto_server` serves it, with one answer corrected: moto 5.2
names the root of CompleteMultipartUpload's answer <CompleteMultipartUploadResponse> where S3 says
<CompleteMultipartUploadResult> (getmoto/moto#10055), and pyarrow, so Ray, rejects every multipart upload.
Usage: python tests/s3_server.py PORT"""
from __future__ import annotations

import sys

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple

WRONG, RIGHT = b"CompleteMultipartUploadResponse", b"CompleteMultipartUploadResult"


def corrected(app):
    """The WSGI app, its CompleteMultipartUpload answers renamed as S3 names them."""

    def serve(environ, start_response):
        completing = environ["REQUEST_METHOD"] == "POST" and "uploadId=" in environ.get("QUERY_STRING", "")
        if not completing:
            return app(environ, start_response)
        answer: dict = {}

        def keep(status, headers, exc_info=None):
            answer.update(status=status, headers=headers)
            return lambda data: None

        body = b"".join(app(environ, keep)).replace(WRONG, RIGHT)
        headers = [(k, str(len(body)) if k.lower() == "content-length" else v) for k, v in answer["headers"]]
        start_response(answer["status"], headers)
        return [body]

    return serve


if __name__ == "__main__":
    run_simple("127.0.0.1", int(sys.argv[1]), corrected(DomainDispatcherApplication(create_backend_app)),
               threaded=True)
