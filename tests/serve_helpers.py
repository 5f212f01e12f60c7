"""Shared by the inspector's tests: a random decoder for the tiny target, and a real server."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import torch


def random_decoder(tiny_target, directory):
    """The tiny target with a random (untrained, non-zero) LoRA decoder, saved like `train`."""
    from latentqa.arch import model_info
    from latentqa.decoder import DecoderSpec, add_decoder_adapter, save_decoder
    from latentqa.models import load_model

    model = load_model(str(tiny_target)).model
    info = model_info(model)
    spec = DecoderSpec(target=str(tiny_target), model_type=info.model_type,
                       num_blocks=info.num_blocks, hidden_size=info.hidden_size,
                       read_layer=2, write_layer=0, read_layers=[2])
    torch.manual_seed(1)
    decoder = add_decoder_adapter(model, r=4, init_lora_weights=False)
    return save_decoder(decoder, directory, spec)


@contextlib.contextmanager
def serving(app):
    """``app`` under uvicorn on a free loopback port, in a thread; yields the base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
