from millstream import Millstream
from millstream.web import api_group

ms = Millstream()
app = ms.fastapi()  # lifespan starts the consumers and drains them on shutdown
api = api_group(ms, version=1, auth=True)  # /api/v1, JWT bearer auth


@api.get("/orders/{order_id}")
async def order(order_id: str) -> dict[str, str]:
    return {"id": order_id, "status": "CREATED"}


app.include_router(api)
