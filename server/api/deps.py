"""Small dependencies that reach the app's state; no logic, no locks."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from server.state import AppState


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.hearth
    return state


State = Annotated[AppState, Depends(get_state)]
