from chat.consumers import ChatConsumer

# WebSocket paths (exact) and their consumers; voiceflow.asgi routes by them.
websocket_routes = {
    "/ws/chat/": ChatConsumer,
}
