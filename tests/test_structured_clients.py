"""Real clients get parsed objects from genq on the bundled SmolLM2: LangChain, openai's parse, tools, ATS."""

from __future__ import annotations

import itertools
import json
from typing import Any

import jsonschema_rs
import pytest
from langchain_openai import ChatOpenAI
from openai import OpenAI
from pydantic import BaseModel, Field

from genq.client import Client

MODEL = "smollm2-135m-instruct"
PROMPT = "Maria Lopez is 34 years old and lives in Madrid. Extract her name and age."


class Person(BaseModel):
    """A person named in a text."""

    name: str = Field(description="the person's full name")
    age: int = Field(description="age in years")


class SendEmail(BaseModel):
    """Send an email to someone."""

    to: str = Field(description="email address")
    subject: str


RESUME = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 60},
        "years_of_experience": {"type": "integer", "minimum": 0, "maximum": 60},
        "skills": {"type": "array", "items": {"type": "string", "maxLength": 40}, "maxItems": 8},
    },
    "required": ["name", "years_of_experience", "skills"],
    "additionalProperties": False,
}
NAMES = ["Ada Lovelace", "Grace Hopper", "Alan Turing", "Linus Torvalds", "Margaret Hamilton"]
SKILLS = [
    ["Python", "SQL"],
    ["Java", "Kubernetes", "AWS"],
    ["COBOL"],
    ["C", "Linux", "Git"],
    ["Go", "Terraform"],
]
TEMPLATES = [
    "{name}\nSoftware engineer with {years} years of experience.\nSkills: {skills}.",
    "Resume of {name}. Worked {years} years in industry. Key skills: {skills}.",
]


def resumes(n: int) -> list[str]:
    """Build n distinct resumes from templates: names, years and skills vary."""
    combos = itertools.product(TEMPLATES, NAMES, SKILLS, range(1, 30, 3))
    return [
        t.format(name=name, years=years, skills=", ".join(skills))
        for (t, name, skills, years), _ in zip(combos, range(n), strict=False)
    ]


def _stack(start_worker, api_server: str) -> str:
    start_worker(model=MODEL)
    return api_server + "/v1"


def _chat(base: str) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=base, api_key="unused", model=MODEL, temperature=0, max_tokens=120, max_retries=0
    )


@pytest.mark.slow
def test_langchain_openai_and_tools_get_parsed_objects(start_worker, api_server: str) -> None:
    base = _stack(start_worker, api_server)
    for method in ("json_schema", "function_calling", "json_mode"):
        question = PROMPT
        if method == "json_mode":  # json_object fixes the syntax only; the keys come from the prompt
            question += ' Reply in JSON like {"name": "...", "age": 0}.'
        person = _chat(base).with_structured_output(Person, method=method).invoke(question)
        assert isinstance(person, Person), method
        assert person.name and person.age >= 0, method
    oai = OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=300)
    parsed = oai.chat.completions.parse(
        model=MODEL, messages=[{"role": "user", "content": PROMPT}], response_format=Person, temperature=0
    )
    assert isinstance(parsed.choices[0].message.parsed, Person)
    forced = _chat(base).bind_tools([SendEmail], tool_choice="SendEmail")
    reply = forced.invoke("Email bob@example.com that the meeting moved to Monday.")
    [call] = reply.tool_calls
    assert call["name"] == "SendEmail"
    assert SendEmail.model_validate(call["args"])


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 100 SmolLM2 jobs on a shared 2-core machine
def test_fifty_resumes_all_parse_and_validate(start_worker, api_server: str, client: Client) -> None:
    _stack(start_worker, api_server)
    prompts = resumes(50)
    assert len(set(prompts)) == 50

    def run(constrained: bool) -> list[dict[str, Any]]:
        extra: dict[str, Any] = {"json_schema": RESUME} if constrained else {}
        ids = [
            client.submit(
                model=MODEL,
                messages=[
                    {"role": "system", "content": "Extract name, years_of_experience and skills as JSON."},
                    {"role": "user", "content": text},
                ],
                max_new_tokens=300 if constrained else 120,  # 120 fits a valid answer twice over
                temperature=0,
                **extra,
            )["id"]
            for text in prompts
        ]
        return [client.wait(i, 900) for i in ids]

    def valid(text: str) -> bool:
        try:
            jsonschema_rs.validate(RESUME, json.loads(text))
        except (ValueError, jsonschema_rs.ValidationError):
            return False
        return True

    constrained = run(True)
    tokens = sum(j["usage"]["completion_tokens"] for j in constrained)
    print(
        f"\nconstrained: {tokens} tokens, longest {max(j['usage']['completion_tokens'] for j in constrained)}"
    )
    assert all(j["status"] == "succeeded" for j in constrained)
    assert [j["output"]["finish_reason"] for j in constrained] == ["stop"] * 50
    bad = [j["output"]["text"] for j in constrained if not valid(j["output"]["text"])]
    assert bad == []
    free = run(False)
    rate = sum(valid(j["output"]["text"]) for j in free if j["output"])
    print(f"\nresume extraction on {MODEL}: constrained 50/50 valid, unconstrained {rate}/50 valid")
